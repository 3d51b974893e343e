"""Running a converted model and describing where it ran (torch only where a module says so)."""
