"""The single file: its layout and manifest, the boot that runs first inside a .pyz and its
extraction, the cache and its cleanup, atomic JSON. Imports the standard library only."""
