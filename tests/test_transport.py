"""kombu's Redis channel reuses one client object per pool (taskplatform.transport)."""

from __future__ import annotations

from kombu import Connection

from taskplatform.config import broker_url_for
from taskplatform.transport import reuse_redis_clients


def test_a_channel_reuses_its_client_until_its_pool_is_replaced(redis_server):
    reuse_redis_clients()
    reuse_redis_clients()  # idempotent
    with Connection(broker_url_for(redis_server.url)) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first
        with channel.conn_or_acquire() as client:  # what puts, acks and the QoS use
            assert client is first
            assert client.ping()
        channel._disconnect_pools()  # what kombu does after a connection error
        second = channel._create_client()
        assert second is not first and second.ping()
        # Messages still flow through it.
        queue = conn.SimpleQueue("tp-transport-test")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.clear()
        queue.close()
