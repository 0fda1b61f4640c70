"""Pipeline stages: each is one function, a typed value in and a typed value out."""
