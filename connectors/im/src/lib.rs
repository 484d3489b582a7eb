//! Chat channels. Group robots (channels `dingtalk_robot`, `feishu`,
//! `wecom_robot`, `slack`, `teams`) are
//! named in config with their credentials; a delivery's address names the
//! robot, so tokens never travel through the SQL pipeline or the topics.
//! Messages to people go to the id in the address: DingTalk work notices
//! (`dingtalk`) and WeCom app messages (`wecom`) to a member's userid,
//! WeChat template messages to a follower's openid, Telegram to a chat id.
//!
//! These APIs answer HTTP 200 for most failures: every answer is read by its
//! error code (`errcode` / `code` / `ok`), never by the status alone.

pub mod dingtalk;
pub mod dingtalk_work;
pub mod feishu;
mod robots;
mod token;
pub mod slack;
pub mod teams;
pub mod telegram;
pub mod wechat;
pub mod wecom;
pub mod wecom_app;

#[cfg(feature = "fake")]
pub mod fake;

pub use dingtalk::{DingTalkChannel, DingTalkConfig};
pub use dingtalk_work::{DingTalkWorkChannel, DingTalkWorkConfig};
pub use feishu::{FeishuChannel, FeishuConfig};
pub use robots::RobotSecrets;
pub use slack::{SlackChannel, SlackConfig};
pub use teams::{TeamsChannel, TeamsConfig};
pub use telegram::{TelegramChannel, TelegramConfig};
pub use wechat::{WeChatChannel, WeChatConfig, WeChatTemplate};
pub use wecom::{WeComChannel, WeComConfig};
pub use wecom_app::{WeComAppChannel, WeComAppConfig};
