"""Data preparation: raw videos -> curated manifest (curate/) -> clips -> degraded pairs -> shards."""
