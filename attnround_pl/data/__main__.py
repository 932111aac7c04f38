"""``python -m attnround_pl.data --root data``: put Fashion-MNIST where torchvision looks."""

import sys

from .fashion_mnist_files import main

sys.exit(main())
