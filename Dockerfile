# syntax=docker/dockerfile:1
# Apache Airflow 3.3 with leadpost installed (provider, plugin, `leadpost` CLI), for
# docker-compose.yaml. DAGs and triggers.yaml are mounted at run time, not baked in.
FROM apache/airflow:3.3.2-python3.11

# Only what the package build needs (.dockerignore keeps the rest of the repo out).
COPY --chown=airflow:0 pyproject.toml constraints.txt README.md /home/airflow/leadpost-src/
COPY --chown=airflow:0 plugins/ /home/airflow/leadpost-src/plugins/

# constraints.txt pins every dependency (celery 5.6.3 among them); naming the image's own
# apache-airflow version keeps pip from ever moving Airflow itself.
RUN pip install --no-cache-dir \
        -c /home/airflow/leadpost-src/constraints.txt \
        "apache-airflow==${AIRFLOW_VERSION}" \
        "/home/airflow/leadpost-src[postgres,celery]" \
    && rm -rf /home/airflow/leadpost-src
