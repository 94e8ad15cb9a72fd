#!/usr/bin/env bash
# The kernel's own iommufd selftests (Linux 7.3, unmodified) through `iommu-sim exec`.
# Builds them (fetching the 7.3 sources, ~20 s, and installing gcc/libcap-dev when missing
# and root), reserves huge pages as the MAP_HUGETLB tests need, runs both programs and
# fails on any `fail:` other than 0. Usage: ci/selftests.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
tools=../shared/linux-7.3
[ -x "$tools/build-selftests.sh" ] || tools=ci/linux-7.3
if ! command -v cc >/dev/null || [ ! -f /usr/include/sys/capability.h ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q gcc libcap-dev >/dev/null
  else
    echo "ci/selftests.sh: needs a C compiler and libcap headers (gcc, libcap-dev)" >&2
    exit 2
  fi
fi
bash "$tools/build-selftests.sh" "$out" >/dev/null
if [ "$(id -u)" = 0 ] && [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 64 ]; then
  echo 64 > /proc/sys/vm/nr_hugepages || true
fi
status=0
for prog in iommufd iommufd_fail_nth; do
  start=$(date +%s)
  python -m iommu_sim exec -- "$out/$prog" > "$out/$prog.tap" 2>&1 || true
  totals=$(grep '^# Totals:' "$out/$prog.tap" || echo "# Totals: none (the program did not finish)")
  echo "$prog: ${totals#\# } in $(( $(date +%s) - start )) s"
  if ! grep -q '^# Totals: pass:[0-9]* fail:0 ' "$out/$prog.tap"; then
    grep '^not ok\|^# .*Expected\|internal error' "$out/$prog.tap" | head -40 >&2 || true
    status=1
  fi
done
exit $status
