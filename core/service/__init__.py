"""Front ends served over HTTP: the picking service and the browser pages (a composition root, like core/cli)."""
