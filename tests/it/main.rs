//! Integration tests: the real client, store and daemon against the built-in simulator on a
//! loopback port, real SQLite files, real processes.

mod answers;
mod app;
mod browser;
mod cdr;
mod cli;
mod client;
mod clock;
mod commands;
mod console;
mod disk;
mod events;
mod faults;
mod group;
mod helpers;
mod ids;
mod life;
mod migrations;
mod monitoring;
mod openapi;
mod overtime;
mod planner;
mod production;
mod reclassify;
mod refresh;
mod service;
mod sim;
mod sweep;
mod tallies;
