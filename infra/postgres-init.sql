-- First start of the Postgres container: databases for the MLflow and Prefect servers.
-- (POSTGRES_DB creates `pricecast` itself.)
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
