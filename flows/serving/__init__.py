"""The champion as a self-contained MLflow pyfunc: log it, serve it, get its Keras network back."""
