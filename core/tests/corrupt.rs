//! One corrupt key or task must not take the admin views down with it: a
//! queue key of the wrong type becomes an error row naming the queue and
//! the key, a queue name that is not UTF-8 is skipped, and a task hash of
//! the wrong type or with non-UTF-8 bytes does not fail its page.

mod support;

use rtq_core::admin::Admin;
use rtq_core::keys::QueueKeys;
use rtq_core::{Client, TaskRequest};
use serde_json::json;
use support::*;

#[tokio::test]
async fn a_corrupt_queue_is_an_error_row_and_the_others_are_read_as_usual() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    admin.pause("good", true).await.unwrap();
    admin.pause("bad", true).await.unwrap();
    let good = client.queue("good").unwrap();
    good.submit(TaskRequest::json(json!({"n": 1})))
        .await
        .unwrap();
    let mut conn = redis.conn();
    let bad = QueueKeys::new("bad").unwrap();
    let _: () = redis::cmd("DEL").arg(bad.meta()).query(&mut conn).unwrap();
    let _: () = redis::cmd("SET")
        .arg(bad.meta())
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(rtq_core::keys::QUEUES)
        .arg(b"\xff\xfe-not-utf8".as_slice())
        .query(&mut conn)
        .unwrap();

    let rows = admin.dashboard(6).await.expect("the dashboard still reads");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (bad_row, _) = rows.iter().find(|(o, _)| o.name == "bad").unwrap();
    let error = bad_row
        .error
        .as_deref()
        .expect("the bad queue is an error row");
    assert!(
        error.contains("queue bad") && error.contains(&bad.meta()),
        "{error}"
    );
    assert!(error.contains("WRONGTYPE"), "{error}");
    let (good_row, _) = rows.iter().find(|(o, _)| o.name == "good").unwrap();
    assert_eq!(
        (good_row.error.as_deref(), good_row.pending, good_row.paused),
        (None, 1, true)
    );
    assert_eq!(admin.queues().await.unwrap(), ["bad", "good"]);
}

#[tokio::test]
async fn a_corrupt_task_does_not_fail_its_page() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    admin.pause("q", true).await.unwrap();
    let q = client.queue("q").unwrap();
    for id in ["a", "b", "c"] {
        q.submit(TaskRequest::json(json!({"id": id})).id(id))
            .await
            .unwrap();
    }
    let k = QueueKeys::new("q").unwrap();
    let mut conn = redis.conn();
    // b: a field with bytes that are not UTF-8; c: not a hash at all.
    let _: () = redis::cmd("HSET")
        .arg(k.task("b"))
        .arg("w")
        .arg(b"\xff\xfeworker".as_slice())
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("DEL").arg(k.task("c")).query(&mut conn).unwrap();
    let _: () = redis::cmd("SET")
        .arg(k.task("c"))
        .arg("x")
        .query(&mut conn)
        .unwrap();

    let page = admin
        .pending("q", 0, 10)
        .await
        .expect("the page still reads");
    let ids: Vec<&str> = page.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "{page:?}");
    assert!(page[1].worker.contains("worker"), "{:?}", page[1].worker);
}

#[tokio::test]
async fn a_function_failing_inside_redis_names_the_operation_queue_and_task() {
    let redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    let admin = Admin::new(&client);
    let k = QueueKeys::new("lua").unwrap();
    let mut conn = redis.conn();
    let _: () = redis::cmd("SET")
        .arg(k.task("t1"))
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let err = admin.requeue("lua", "t1").await.unwrap_err();
    let msg = err.to_string();
    match &err {
        rtq_core::Error::Function {
            function,
            queue,
            task,
            reason,
        } => {
            assert_eq!(
                (*function, queue.as_str(), task.as_deref()),
                ("rtq2_requeue", "lua", Some("t1"))
            );
            assert!(reason.starts_with("WRONGTYPE"), "{reason}");
        }
        other => panic!("expected Error::Function, got {other:?}"),
    }
    assert!(msg.contains("rtq2_requeue on queue lua, task t1,"), "{msg}");
    assert!(
        !msg.contains("user_function") && !msg.contains("script:"),
        "{msg}"
    );
}
