"""Every SQL statement of pricecast: SQLAlchemy 2.0 models, engine, migrations, repositories."""
