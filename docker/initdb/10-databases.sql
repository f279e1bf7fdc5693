-- Run once by the postgres image's entrypoint, when its data volume is empty, as
-- POSTGRES_USER (orch), who therefore owns both databases. To rerun it, remove the
-- volume (this deletes every run and study): docker compose -f docker/compose.yaml down -v
CREATE DATABASE mlflow;  -- MLflow's tracking store (experiments, runs, metrics)
CREATE DATABASE optuna;  -- Optuna studies: the sweep work queue and tuning trials
