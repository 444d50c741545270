"""One readable test per catalogued error path (fault_inject.catalog, E01..E52)."""
