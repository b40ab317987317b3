"""The package version, stamped into every manifest row and export. Apart from the package root, whose
``load`` imports the sampling stage, so that the stages stamping it need not import the root."""

__version__ = "0.1.0"
