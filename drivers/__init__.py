"""IOMMU driver plugins: one sub-package per vendor (driver + hardware model)."""
