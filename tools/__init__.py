"""Developer tools around the pipeline (not DVC stages): metric drift, profiles, plot rendering."""
