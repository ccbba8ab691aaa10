"""Model versions on disk and in the store: candidate -> active -> retired."""
