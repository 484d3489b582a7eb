//! Chat channels. Group robots (DingTalk, Feishu/Lark, WeCom, Slack) are
//! named in config with their credentials; a delivery's address names the
//! robot, so tokens never travel through the SQL pipeline or the topics.
//! Telegram bots send to the chat id in the address, WeChat template
//! messages to the follower's openid.
//!
//! These APIs answer HTTP 200 for most failures: every answer is read by its
//! error code (`errcode` / `code` / `ok`), never by the status alone.

pub mod dingtalk;
pub mod feishu;
mod robots;
pub mod slack;
pub mod telegram;
pub mod wechat;
pub mod wecom;

#[cfg(feature = "fake")]
pub mod fake;

pub use dingtalk::{DingTalkChannel, DingTalkConfig};
pub use feishu::{FeishuChannel, FeishuConfig};
pub use robots::RobotSecrets;
pub use slack::{SlackChannel, SlackConfig};
pub use telegram::{TelegramChannel, TelegramConfig};
pub use wechat::{WeChatChannel, WeChatConfig, WeChatTemplate};
pub use wecom::{WeComChannel, WeComConfig};
