"""Token stores."""
