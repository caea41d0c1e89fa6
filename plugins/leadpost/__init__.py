"""leadpost: push marketing leads to any HTTP endpoint with Apache Airflow."""
__version__ = "0.1.0"
