"""The shipped scenario files (package data): the tour's steps, one file per vendor, and
small examples. ``iommu-sim run --list`` lists them; :func:`iommu_sim.scenario.builtin_scenarios`
finds them."""
