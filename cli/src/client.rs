//! Client commands (`request`, `worker`, `user`).

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum RequestCommand {}

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {}

#[derive(Subcommand, Debug)]
pub enum UserCommand {}

pub fn request(command: RequestCommand) -> anyhow::Result<()> {
    match command {}
}

pub fn worker(command: WorkerCommand) -> anyhow::Result<()> {
    match command {}
}

pub fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {}
}
