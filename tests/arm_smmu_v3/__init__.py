"""Tests of the ARM SMMUv3 driver and its hardware model."""
