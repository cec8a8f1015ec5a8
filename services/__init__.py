"""Long-running services (the registry, the launcher) and the small runtime every process shares."""
