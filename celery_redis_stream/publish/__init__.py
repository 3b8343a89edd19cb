"""Publishing a batch's task messages: dispatch (the choice of path, bad entries apart from retryable failures);
Redis: redis_fast, redis_envelope, exactly_once; RabbitMQ: amqp_fast, amqp_frames, amqp_confirms."""
