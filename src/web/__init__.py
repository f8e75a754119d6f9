"""HTTP around the Flask app: request/response models, OpenAPI, JSON views, waitress lanes and errors, WSGI."""
