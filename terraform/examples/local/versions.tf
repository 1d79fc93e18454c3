terraform {
  required_version = ">= 1.5.0"

  # Built-in functions and hashicorp/local only: this example writes files, nothing else.
  required_providers {
    local = {
      source  = "hashicorp/local"
      version = "~> 2.5"
    }
  }
}
