"""Files from outside: inputs checked to be regular files, images bounded, outputs written whole."""
