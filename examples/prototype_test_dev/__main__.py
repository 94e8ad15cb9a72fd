"""``python -m examples.prototype_test_dev`` (from the repository root): the demo."""

from examples.prototype_test_dev.demo import main

main()
