terraform {
  # optional() attribute defaults (1.3), strcontains and output preconditions (1.5). The module uses only built-in
  # functions: it needs no provider, so any example (even one with only hashicorp/local) can call it.
  required_version = ">= 1.5.0"
}
