"""Model weights: where they live and how they load. The built-in stack ships inside pip packages."""
