"""HTTP routers, one per file. Handlers validate, submit, await and shape; no tensor code."""
