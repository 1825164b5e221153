"""Pure forecasting on numpy/pandas/Keras: ISO weeks, windows, LSTM, baselines, metrics, backtest.

No SQL, no Prefect, no MLflow, no environment variables: everything comes in as arguments.
"""
