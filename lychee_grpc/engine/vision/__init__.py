"""The vision tower's own forward: layouts, attention dispatch, the window kernel, MLP padding, the output cache."""
