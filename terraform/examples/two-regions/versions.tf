terraform {
  required_version = ">= 1.5.0"

  required_providers {
    # Equinix ended Metal on 2026-06-30 and drops its resources from provider 5.0: stay on 4.x (README.md).
    equinix = {
      source  = "equinix/equinix"
      version = ">= 1.30, < 5.0"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}
