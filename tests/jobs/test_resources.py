"""Resource sizing: impossible requests fail at once, naming the config key (issue 7, part 5)."""

from __future__ import annotations

import math

import pytest

from pipeline.errors import UserError
from pipeline.raycluster import check_resources, cluster_capacity


@pytest.mark.timeout(120)
def test_check_resources_refuses_what_the_cluster_cannot_provide(ray_local):
    # ray_local has 4 logical CPUs and no GPU.
    with pytest.raises(UserError) as err:
        check_resources("preprocess worker", cpus=64, key="preprocess.cpus_per_worker")
    msg = str(err.value)
    assert "preprocess.cpus_per_worker" in msg and "64 CPUs" in msg and "wait forever" in msg

    with pytest.raises(UserError, match="train.gpus_per_worker"):
        check_resources("training worker", cpus=1, gpus=1, key="train.gpus_per_worker")

    # Each fits on the node, but three workers that start together need 6 of the 4 CPUs.
    with pytest.raises(UserError, match=r"3 x 2 CPUs .*train.num_workers"):
        check_resources("training worker", cpus=2, count=3, key="train.num_workers / train.cpus_per_worker")

    check_resources("training worker", cpus=1, count=4, key="train.num_workers")  # exactly fits

    # Training workers that hold every CPU starve the Ray Data tasks that feed them.
    with pytest.raises(UserError, match=r"leaving less than 1 of the cluster's 4 CPUs for Ray Data.*train.num_workers"):
        check_resources("training worker", cpus=1, count=4, key="train.num_workers", spare_cpus=1, spare_for="Ray Data")
    check_resources("training worker", cpus=1, count=3, key="train.num_workers", spare_cpus=1, spare_for="Ray Data")
    check_resources("sweep trial", cpus=0.5, key="tune.cpus_per_trial")


def test_capacity_counts_autoscaler_node_types_not_yet_running():
    """A GPU group scaled to zero has no live GPU, yet a GPU request must not be refused."""
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    gpu = config.node_group_configs.add(name="gpu_worker", max_count=2)
    gpu.resources["GPU"] = 4
    gpu.resources["CPU"] = 48
    cpu = config.node_group_configs.add(name="cpu_worker", max_count=-1)
    cpu.resources["CPU"] = 16
    head = [{"CPU": 0.0, "memory": 1e9}]

    total, largest = cluster_capacity(head, config)
    assert total["GPU"] == 8 and largest["GPU"] == 4
    assert math.isinf(total["CPU"]) and largest["CPU"] == 48

    # Without a cluster config only live nodes count.
    total, largest = cluster_capacity([{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}])
    assert total == {"CPU": 10.0, "GPU": 1.0} and largest == {"CPU": 8.0, "GPU": 1.0}
