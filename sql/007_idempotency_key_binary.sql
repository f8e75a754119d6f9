-- mailjobs schema, version 7: Idempotency-Key values are compared exactly (case matters):
-- "Order-1" and "order-1" are different keys.
ALTER TABLE jobs MODIFY idempotency_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
