"""Model versions on disk and in the store: candidate -> active -> retired; a superseded
version's files pruned -> removed (its record stays)."""
