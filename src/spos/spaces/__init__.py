"""Built-in search spaces: torch-free definitions in :mod:`spos.spaces.catalog`, model
builders (torch) in one module per family, e.g. :mod:`spos.spaces.shufflenet`."""
