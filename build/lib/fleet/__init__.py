"""Fleet administration: model bundles, signing, rollout and rollback (not built yet)."""
