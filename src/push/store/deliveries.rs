//! Webhook deliveries: leased by one node at a time, retried until a 2xx or given up.

use sqlx::Row;

use super::{DeliveryRow, Store, StoreError, lease_ms};

impl Store {
    /// Claims deliveries due at `now` for this node: leased until `now + LEASE`, so no other
    /// node sends them meanwhile.
    pub async fn due_deliveries(&self, now: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        // Polled every 250 ms: a read first, so that an idle node never writes (nor takes the
        // write lock from the writers).
        let due = sqlx::query(
            "SELECT 1 AS x FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) LIMIT 1",
        );
        if !self.finds(due.bind(now)).await? {
            return Ok(Vec::new());
        }
        // A lease needs no sync of its own (after a crash it is taken again), but the write
        // takes its turn with the other writers.
        let turn = self.writing().await;
        let rows = sqlx::query(&format!(
            "UPDATE deliveries SET leased_by = $2, lease_until = $3 WHERE id IN \
             (SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) \
             ORDER BY next_attempt_at LIMIT 64{}) \
             RETURNING id, url, secret, body, attempts",
            self.dialect.skip_locked()
        ))
        .bind(now)
        .bind(&self.node)
        .bind(now + lease_ms())
        .fetch_all(&self.pool)
        .await?;
        drop(turn);
        Ok(rows
            .iter()
            .map(|r| DeliveryRow {
                id: r.get("id"),
                url: r.get("url"),
                secret: r.get("secret"),
                body: r.get("body"),
                attempts: u32::try_from(r.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
            })
            .collect())
    }

    /// Records a delivery attempt: delivered, retried at `next`, or given up.
    pub async fn delivery_attempted(
        &self,
        id: &str,
        delivered: bool,
        error: Option<&str>,
        next: Option<i64>,
    ) -> Result<(), StoreError> {
        let state = match (delivered, next) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let turn = self.writing().await;
        sqlx::query(
            "UPDATE deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, \
             last_error = $3, leased_by = NULL, lease_until = NULL WHERE id = $4",
        )
        .bind(state)
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.written(turn).await?;
        Ok(())
    }
}
