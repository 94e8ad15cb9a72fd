"""The iommufd selftest mock IOMMU: driver plugin (:mod:`drivers.mock.plugin`) and its
hardware model (:mod:`drivers.mock.hw`)."""
