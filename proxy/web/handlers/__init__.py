"""HTTP <-> domain only: parse and validate a request, call the domain, render JSON."""
