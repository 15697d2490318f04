"""fedgrid: federated learning whose rounds are Parsl app DAGs across HPC, cloud and lab sites."""

__version__ = "0.1.0"
