"""The whole conformance kit on the in-tree drivers, with their nesting/vIOMMU test data
(glue.py): the nesting and vIOMMU suites run here instead of skipping."""

from __future__ import annotations

import pytest

from iommu_core.testing.conformance import (  # noqa: F401 - collected by pytest
    env,
    test_blocked_domain_faults,
    test_dirty_tracking,
    test_dma_reads_what_user_wrote,
    test_identity_domain,
    test_incompatible_flags_rejected,
    test_map_unmap_iova_to_phys,
    test_nest_parent_domain,
    test_nested_stage1_invalidation,
    test_nested_translation,
    test_page_request,
    test_paging_domain_alloc,
    test_pasid_attach,
    test_probe_device,
    test_replace_domain,
    test_unclaimed_features_refused,
    test_unmap_then_dma_faults,
    test_viommu_nested_translation,
    test_viommu_unknown_type,
)
from iommu_core.testing.describe import (  # noqa: F401 - collected by pytest
    test_constants_are_integers,
    test_device_view_matches_the_dma,
    test_domain_view_is_the_walked_table,
    test_golden_rules_agree_with_the_model,
    test_hw_info_is_described,
    test_structure_layouts,
)
from iommu_core.testing.hw_queue import (  # noqa: F401 - collected by pytest
    test_hw_queue_bad_arguments,
    test_hw_queue_destroyed_queue_is_not_read,
    test_hw_queue_guest_invalidation,
    test_hw_queue_index_rules,
    test_hw_queue_unknown_type,
)
from tests.plugin_kit.glue import GLUE

pytestmark = pytest.mark.iommu_drivers(*sorted(GLUE))
