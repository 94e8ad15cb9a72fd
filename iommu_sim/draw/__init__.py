"""Pictures the project draws itself, as SVG (and one HTML page that holds them):

* :mod:`~iommu_sim.draw.svg` - the canvas, escaping, the stylesheet;
* :mod:`~iommu_sim.draw.bitfield` - a structure's bit-field diagram;
* :mod:`~iommu_sim.draw.walk` - the walk the hardware did, stage by stage;
* :mod:`~iommu_sim.draw.layout` - a layered layout for graphs;
* :mod:`~iommu_sim.draw.graph` - the object and topology graph;
* :mod:`~iommu_sim.draw.layers` - the layer figure of the architecture;
* :mod:`~iommu_sim.draw.path` - one call tree as swimlanes, one per layer;
* :mod:`~iommu_sim.draw.html` - one self-contained page: a tour or a trace.

Everything is drawn from the descriptions the drivers give (:mod:`iommu_core.describe`)
and the recorded call tree: nothing here knows a vendor. Output is deterministic, so the
docs' recorded pictures are compared byte for byte.
"""
