"""reactive-loop operator: reconciles ReactiveLoop resources into node pods."""
