from iommu_sim.cli import main

raise SystemExit(main())
