"""Zone control plane: registers sidecars, issues their certificates, tracks their health, pushes their config."""
