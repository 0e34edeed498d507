//! The one-database-per-test helper against the shared test cluster: every call gets its own database.

use tokio_postgres::NoTls;

async fn select_one(connection_string: &str) -> i32 {
    let (client, connection) = tokio_postgres::connect(connection_string, NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    let value: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    drop(client);
    connection.await.unwrap().unwrap();
    value
}

#[tokio::test]
async fn test_databases_are_distinct_and_accept_connections() {
    let first = corral_testkit::test_database().await;
    let second = corral_testkit::test_database().await;
    assert_ne!(first.name, second.name);
    assert_ne!(first.url, second.url);
    for db in [&first, &second] {
        let (client, connection) = db.config().connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        let name: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
        assert_eq!(name, db.name);
        assert_eq!(select_one(&db.url).await, 1);
    }
}
