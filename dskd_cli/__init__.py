"""The `dskd` command line, above the engine (`dskd_core`), the API (`api`) and the worker (`worker`)."""
